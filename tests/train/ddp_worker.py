"""One rank of tests/train/test_dist.py, started by torchrun: train configs/smoke.yaml (aux losses
off) for 2 steps, resume it to 4 under the same torchrun, save this rank's weights.

    python -m torch.distributed.run --nproc_per_node=2 tests/train/ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from selmem.train import dist  # noqa: E402
from selmem.train.loop import Trainer  # noqa: E402
from tests.train.test_dist import experiment  # noqa: E402


def main(out: str) -> None:
    first = Trainer.create(experiment(out, steps=2))
    first.fit()
    again = Trainer.create(experiment(out, steps=4, resume=True))  # same process group, rank 0's checkpoint
    again.fit()
    rank = int(os.environ["RANK"])
    save_file({k: v.contiguous() for k, v in again.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    dist.close(again.world)


if __name__ == "__main__":
    main(sys.argv[1])
