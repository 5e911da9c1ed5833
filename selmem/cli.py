"""Command line: ``selmem <command> [--config FILE.yaml] [--field.sub value ...]``.

Every config field can be set in YAML and overridden on the command line (tyro); ``--help``
after a command lists the fields with their docstrings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import itertools
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tyro

USAGE = """usage: selmem <command> [options]

commands:
  train     train a model on a task            selmem train --config configs/recall.yaml
  eval      evaluate a run's checkpoint        selmem eval runs/NAME
  inspect   pictures of what the memory holds  selmem inspect runs/NAME
  compare   several models, same budget        selmem compare --config configs/recall.yaml
  ablate    selmem with each part switched off  selmem ablate --config configs/cpu/mqar.yaml
  length    accuracy against evaluated length   selmem length runs/compare-NAME
  bench     speed and memory of every model    selmem bench --config configs/cpu.yaml
  report    comparisons -> docs/RESULTS.md      selmem report runs/compare-NAME
  tasks     list tasks and their parameters    selmem tasks [--config configs/cpu/babi.yaml]
  generate  sample from a trained run          selmem generate runs/NAME --prompt "def "
  export    a run -> Hugging Face folder       selmem export runs/NAME runs/NAME-hf

`selmem <command> --help` lists every option."""


def pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--config PATH`` (or ``--config=PATH``) out of ``args``."""
    rest, path, i = [], None, 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                raise ValueError("--config needs a YAML file path")
            path, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--config="):
            path = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return path, rest


def parse(cls: Any, args: list[str], prog: str, **kw: Any) -> Any:
    """``tyro.cli(cls, args=args, prog=prog, **kw)``, a rejected command line raised as a one-line
    ValueError naming the flag and what is wrong ("--model.slots takes an int, got 'abc'"), where tyro
    prints a box of 8-10 lines (issue 28). The reasons come from tyro's parse-error hook
    (``tyro._errors``, private: pinned nowhere, so without it the box is squeezed into one line);
    ``--help`` is untouched."""
    try:
        from tyro._errors import on_parse_error
    except ImportError:  # an older or newer tyro
        on_parse_error = None
    err = io.StringIO()
    hook = on_parse_error(lambda event: _reject(event, cls, args)) if on_parse_error else contextlib.nullcontext()
    try:
        with contextlib.redirect_stderr(err), hook:
            out = tyro.cli(cls, args=args, prog=prog, **kw)
    except SystemExit as e:
        if e.code:  # tyro's own box: its first section (up to a rule or the bottom), one line
            rows = [line.strip().strip("\u2502").strip() for line in err.getvalue().strip().splitlines()[1:]]
            text = " ".join(itertools.takewhile(lambda row: row.strip("\u2500\u2570\u256f"), rows))
            raise ValueError(text or f"tyro refused {' '.join(args)!r}") from None
        sys.stderr.write(err.getvalue())  # --help
        raise
    sys.stderr.write(err.getvalue())  # tyro's warnings, if any
    return out


def _reject(event: Any, cls: Any, args: list[str]) -> None:
    """tyro's parse-error hook: raise one line for the events we know, else return (tyro's box)."""
    name = type(event).__name__
    arg = getattr(event, "argument", None)
    flag = arg and ("/".join(arg.lowered.name_or_flags) or str(arg.lowered.metavar))
    if name == "InstantiationFailure" and arg is None:  # a ValueError of the config class itself
        raise ValueError(event.message)
    if name in ("InstantiationFailure", "InvalidChoice"):
        given = _given(args, arg.lowered.name_or_flags)
        choices = getattr(event, "choices", None) or arg.lowered.choices
        kind = (f"one of {', '.join(map(str, choices))}" if choices else
                {"INT": "an int", "FLOAT": "a float", "STR": "a string"}.get(str(arg.lowered.metavar),
                                                                          str(arg.lowered.metavar)))
        raise ValueError(f"{flag} takes {kind}, got {given!r}" if given is not None else f"{flag}: {event.message}")
    if name == "UnrecognizedArgs":
        flags = [t for t in event.tokens if t.startswith("-")]
        if not flags:
            raise ValueError(f"unexpected argument {event.tokens[0]!r} (see {event.prog} --help)")
        first = flags[0].split("=")[0].replace("_", "-")
        close = difflib.get_close_matches(first, sorted(_flags(cls)), n=1)
        hint = f"did you mean {close[0]}?" if close else f"see {event.prog} --help"
        if close and close[0] == first:  # a real flag on the wrong side of a subcommand
            hint = _flag_order_hint(args, first) or hint
        raise ValueError(f"unknown flag{'s' * (len(flags) > 1)} {', '.join(flags)} ({hint})")
    if name == "MissingArgs":
        missing = [f"argument {a.arg.lowered.name_or_flags[0]}" if a.arg.is_positional() else
                   "/".join(a.arg.lowered.name_or_flags) for a in event.missing_arguments]
        raise ValueError(f"missing {', '.join(missing)} (see {event.prog} --help)")
    if name == "BadValue" and event.reason == "too_few_values":
        raise ValueError(f"{flag} needs a value")


def _flag_order_hint(args: list[str], flag: str) -> str | None:
    """Where ``flag`` belongs relative to the subcommand (``exp.task:mqar``) in ``args``, if one is given.

    tyro reads a subcommand's flags only after it and the other flags only before it.
    """
    subs = [i for i, a in enumerate(args) if ":" in a and not a.startswith("-")]
    at = next((i for i, a in enumerate(args) if a.split("=")[0].replace("_", "-") == flag), None)
    if at is None:
        return None
    if not subs:
        group = flag.lstrip("-").rsplit(".", 1)[0]
        return f"{flag} belongs to a subcommand: give {group}:NAME before it (see --help)"
    sub = args[subs[0]]
    if at < subs[0]:
        return f"{flag} belongs to the subcommand: give it after {sub}"
    return f"{flag} is not a flag of {sub}: give it before {sub}"


def _given(args: list[str], flags: tuple[str, ...]) -> str | None:
    """The value ``args`` gives one of ``flags`` (``--flag value`` or ``--flag=value``), last one wins."""
    names, value = {f.replace("_", "-") for f in flags}, None
    for i, a in enumerate(args):
        key, sep, rest = a.partition("=")
        if key.replace("_", "-") in names:
            value = rest if sep else (args[i + 1] if i + 1 < len(args) else None)
    return value


def _flags(cls: Any, prefix: str = "--") -> set[str]:
    """Every ``--a.b-c`` flag of a dataclass, nested dataclasses and unions of them (tasks) included;
    a nested dataclass marked ``tyro.conf.arg(name="")`` (SelmemConfig.objective) gives its flags
    without its own name, as tyro does."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # a name only importable for type checking: no suggestions
        return set()
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        name = prefix + f.name.replace("_", "-")
        t = hints.get(f.name)
        if typing.get_origin(t) is typing.Annotated:
            if any(getattr(m, "name", None) == "" for m in t.__metadata__):
                name = prefix.rstrip(".")  # flattened into its parent's flags
            t = typing.get_args(t)[0]
        members = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
        members = tuple(typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members)
        nested = [m for m in members if dataclasses.is_dataclass(m)]
        out |= set().union(*(_flags(m, name + ".") for m in nested)) if nested else {name}
    return out


def parse_on_config(args: list[str], cls: type, default: Callable[[Any], Any], prog: str, **kw: Any):
    """Parse ``cls`` from ``args``, starting from ``default(experiment)`` where the experiment is
    ``--config FILE.yaml`` (or the defaults without one). The experiment parsed (``cls`` or its
    ``exp``) is validated here, so a check across fields (segment length against
    model.max_segment_len) names the file, as a check of one field does (issue 28)."""
    from selmem.experiment import ExperimentConfig

    path, rest = pop_config(args)
    base = ExperimentConfig.from_yaml(path) if path else ExperimentConfig()
    out = parse(cls, rest, prog, default=default(base), **kw)
    exp = out if isinstance(out, ExperimentConfig) else getattr(out, "exp", None)
    if isinstance(exp, ExperimentConfig):
        try:
            exp.resolved()
        except ValueError as e:
            flags = " with the command-line flags" if rest else ""
            raise ValueError(f"{path}{flags}: {e}" if path else f"the command-line flags: {e}") from None
    return out


def parse_experiment(args: list[str], prog: str):
    from selmem.experiment import ExperimentConfig

    return parse_on_config(args, ExperimentConfig, lambda base: base, prog,
                           description="Train a model on a task. Start from --config FILE.yaml, override any field.")


def cmd_train(args: list[str]) -> int:
    from selmem.train.loop import train

    exp = parse_experiment(args, "selmem train")
    res = train(exp)
    if "test" not in res:  # a torchrun rank other than 0: rank 0 reports
        return 0
    test = res["test"]
    print(f"\nrun folder: {res['run_dir']}")
    print(f"{res['arch']} on {res['task']}: {res['steps']} steps in {res['wall_s']:.0f} s, "
          f"{res['params']:,} params, {res['state_floats']:,} floats of carried state")
    if res.get("metric") == "exact_match":
        print(f"test exact match {test['exact_match']:.1%} of answers, {test['accuracy']:.1%} of answer "
              f"tokens   (chance {res['chance']:.1%})")
    elif res["chance"] is not None:
        print(f"test answer accuracy {test['accuracy']:.1%}   (chance {res['chance']:.1%})")
    else:
        print(f"test loss {test['bits_per_token']:.3f} bits per token")
    return 0


@dataclass
class EvalArgs:
    """Evaluate a run's checkpoint on its task's fixed test set."""

    run: tyro.conf.Positional[str]
    """Run folder (runs/NAME) or a checkpoint folder inside one (runs/NAME/ckpt/best)."""
    ckpt: str = ""
    """Which checkpoint: best or last (default: the one named by the path, else best)."""
    batches: int = 0
    """Test batches (0 = the run's train.eval_batches)."""
    task_set: list[str] = field(default_factory=list)
    """Task overrides as key=value, e.g. length=2048 to test length generalisation."""
    model_set: list[str] = field(default_factory=list)
    """Model overrides that change no weight, as key=value, e.g. age_weight=0."""


def cmd_eval(args: list[str]) -> int:
    from selmem.runs import load_run
    from selmem.train.loop import evaluate, resolve_device

    a = parse(EvalArgs, args, "selmem eval")
    exp, model, task = load_run(a.run, a.ckpt, a.task_set, a.model_set)
    device = resolve_device(exp.train.device)
    test = task.test_set(a.batches or exp.train.eval_batches, exp.train.batch_size)
    result = evaluate(model.to(device), test, exp.segment_len(), device, task)
    result["chance"] = task.chance
    print(json.dumps(result, indent=1))
    return 0


@dataclass
class InspectArgs:
    """Pictures of what a run's memory selects, holds and reads, on a few test sequences."""

    run: tyro.conf.Positional[str]
    """Run folder (runs/NAME) or a checkpoint folder inside one (runs/NAME/ckpt/best)."""
    ckpt: str = ""
    """Which checkpoint: best or last (default: the one named by the path, else best)."""
    examples: int = 4
    """Test sequences to run and show."""
    out: str = ""
    """Output folder (default RUN/inspect)."""


def cmd_inspect(args: list[str]) -> int:
    from selmem.analysis.inspect import inspect_run

    a = parse(InspectArgs, args, "selmem inspect")
    page = inspect_run(a.run, a.ckpt or None, a.examples, a.out or None)
    print(f"wrote {page} (open it in a browser; the PNGs sit next to it)")
    return 0


def cmd_compare(args: list[str]) -> int:
    from selmem.analysis.compare import CompareArgs, CompareConfig, compare

    a = parse_on_config(args, CompareArgs, lambda base: CompareArgs(CompareConfig(), base), "selmem compare")
    out_dir, table = compare(a.exp, a.compare)
    print(f"\n{table}\n\nwritten to {out_dir}/ (results.md, results.csv, curves.png, state.png)")
    return 0


def cmd_ablate(args: list[str]) -> int:
    from selmem.analysis.ablate import AblateArgs, AblateConfig, ablate

    a = parse_on_config(args, AblateArgs, lambda base: AblateArgs(AblateConfig(), base), "selmem ablate")
    out_dir, table = ablate(a.exp, a.ablate)
    print(f"\n{table}\n\nwritten to {out_dir}/ (results.md, results.json, ablation.png)")
    return 0


def cmd_length(args: list[str]) -> int:
    from selmem.analysis.length import LengthArgs, length

    a = parse(LengthArgs, args, "selmem length")
    out_dir, table = length(a.folders, a.length)
    print(f"\n{table}\n\nwritten to {out_dir}/ (results.md, results.json, length.png)")
    return 0


def cmd_bench(args: list[str]) -> int:
    from selmem.analysis.bench import BenchArgs, BenchConfig, bench

    a = parse_on_config(args, BenchArgs, lambda base: BenchArgs(BenchConfig(), base), "selmem bench")
    _, table = bench(a.exp, a.bench)
    print(f"\n{table}" + (f"\n\nwritten to {a.bench.out}" if a.bench.out else ""))
    return 0


@dataclass
class ReportArgs:
    """Gather `selmem compare` folders into one markdown page with their plots."""

    folders: tyro.conf.Positional[list[str]]
    """Comparison folders (runs/compare-...)."""
    out: str = "docs/RESULTS.md"
    title: str = "Results"


def cmd_report(args: list[str]) -> int:
    from selmem.analysis.report import report

    a = parse(ReportArgs, args, "selmem report")
    print(f"wrote {report(a.folders, a.out, a.title)}")
    return 0


@dataclass
class TasksArgs:
    """List the tasks and their parameters; with --config, check one preset for shortcuts."""

    config: str = ""
    """A preset (configs/cpu/babi.yaml): print how far a lookup table finds its relevant tokens
    and how many answers have their source inside their own segment (what needs no memory)."""
    batches: int = 16
    """Test batches (of 32 rows) the checks read."""


def cmd_tasks(args: list[str]) -> int:
    from selmem.experiment import ExperimentConfig
    from selmem.tasks import describe_tasks
    from selmem.tasks.shortcuts import report

    a = parse(TasksArgs, args, "selmem tasks")
    if not a.config:
        print(describe_tasks())
        return 0
    if a.batches < 1:
        raise ValueError(f"--batches must be >= 1, got {a.batches}")
    exp = ExperimentConfig.from_yaml(a.config)
    try:
        exp = exp.resolved()
    except ValueError as e:
        raise ValueError(f"{a.config}: {e}") from None
    seg = exp.segment_len()
    chance = f", chance {exp.task.chance:.1%}" if exp.task.chance is not None else ""
    print(f"{exp.task.name} ({a.config}), segments of {seg}{chance}:")
    checks = report(exp.task, seg, a.batches)
    for name, value in checks.items():
        print(f"  {name}: {value:.3f}")
    if not checks:
        print("  nothing to check: the task marks no relevant tokens and no answer sources")
    return 0


@dataclass
class GenerateArgs:
    """Print a sample from a trained selmem run, streamed token by token at constant memory."""

    run: tyro.conf.Positional[str]
    """Run folder (runs/NAME) of a selmem model."""
    prompt: str = "import "
    """Text to continue (bytes for a byte-level model such as code-lm; else token ids separated by spaces)."""
    max_new_tokens: int = 500
    """Tokens to generate; the memory stays the same size for any number."""
    temperature: float = 0.8
    """Sampling temperature; 0 = greedy."""
    top_k: int = 0
    """Sample among the k most likely tokens (0 = all)."""
    seed: int = 0
    """Seed of the sampler."""
    ckpt: str = "best"
    """Which checkpoint: best or last."""
    device: str = "cpu"
    """Device to run on (cpu, cuda)."""
    stats: bool = False
    """Write tokens/s, cache floats and peak memory at 10, 100, 1000, ... tokens to stderr."""
    quiet: bool = False
    """Do not print the sample (for timing with --stats)."""


def cmd_generate(args: list[str]) -> int:
    import torch

    from selmem.generate import encode_prompt, stream
    from selmem.runs import load_selmem_run
    from selmem.train.loop import resolve_device

    a = parse(GenerateArgs, args, "selmem generate")
    if a.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if not a.temperature >= 0 or a.temperature == float("inf"):  # NaN fails >= too
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {a.temperature}")
    if a.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0 = all tokens), got {a.top_k}")
    device = resolve_device(a.device, "--device")
    exp, model = load_selmem_run(a.run, a.ckpt)
    torch.set_num_threads(exp.train.threads or torch.get_num_threads())
    prompt = encode_prompt(a.prompt, model.cfg.vocab_size)
    if not a.quiet:
        sys.stdout.write(a.prompt if model.cfg.vocab_size == 256 else a.prompt + " ")
    out = _Discard() if a.quiet else sys.stdout
    stream(model.to(device), prompt, a.max_new_tokens, a.temperature, a.top_k, a.seed, exp.segment_len(),
           out=out, stats=sys.stderr if a.stats else None)
    return 0


class _Discard:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


@dataclass
class ExportArgs:
    """Convert a selmem run's checkpoint to a Hugging Face folder (config.json + model.safetensors)."""

    run: tyro.conf.Positional[str]
    """Run folder (runs/NAME) of a selmem model."""
    out: tyro.conf.Positional[str]
    """Folder to write; load it with AutoModelForCausalLM.from_pretrained after `import selmem.hf`."""
    ckpt: str = "best"
    """Which checkpoint: best or last."""
    force: bool = False
    """Write over a folder that is not empty (never a run folder, nor inside a run's ckpt/)."""


def cmd_export(args: list[str]) -> int:
    a = parse(ExportArgs, args, "selmem export")
    from selmem.hf import export_run

    path = export_run(a.run, a.out, a.ckpt, a.force)
    print(f"wrote {path} (config.json, model.safetensors)")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "ablate": cmd_ablate, "length": cmd_length,
    "bench": cmd_bench, "report": cmd_report, "tasks": cmd_tasks, "inspect": cmd_inspect, "generate": cmd_generate,
    "export": cmd_export,
}


#: errors that are the user's to fix: printed as one line, exit code 2
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, FloatingPointError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Run a command; every error is one line on stderr (exit 2), the traceback only with
    SELMEM_TRACEBACK=1, so a user sees what to fix rather than where in the code it failed."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"selmem: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except KeyboardInterrupt:
        print(f"selmem {cmd}: interrupted; a training run continues from its last checkpoint with "
              "--train.resume", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("SELMEM_TRACEBACK"):
            raise
        kind = "" if isinstance(e, USER_ERRORS) else f"internal error ({type(e).__name__}, "\
            "SELMEM_TRACEBACK=1 shows where): "
        print(f"selmem {cmd}: error: {kind}{' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
