"""Writes docs/RELIABILITY.md: each reliability promise (issue 13), the tests that check it and
what they try, every count taken from the tests' own code (kill points traced from
save_checkpoint, kill list, hypothesis settings, parametrize lists), never typed by hand.

    ./dev reliability            # = .venv/bin/python -m tests.reliability

tests/test_reliability.py fails when the committed page differs from what this writes.
"""

from __future__ import annotations

import ast
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "RELIABILITY.md"


def cases(fn: Callable) -> int:
    """Parametrized cases of a test function (product over its parametrize marks)."""
    sizes = [len(m.args[1]) for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
    return math.prod(sizes)


def examples(fn: Callable) -> int:
    """Hypothesis examples per case (max_examples; derandomized, so the same ones every run)."""
    return fn._hypothesis_internal_use_settings.max_examples * cases(fn)


def ids(fn: Callable, arg: str) -> list[str]:
    """The ids of one parametrize mark of a test function (the one over ``arg``)."""
    mark = next(m for m in fn.pytestmark if m.name == "parametrize" and m.args[0].split(",")[0].strip() == arg)
    return [getattr(p, "id", None) or str(p) for p in mark.kwargs.get("ids") or mark.args[1]]


def unimported(name: str) -> SimpleNamespace:
    """tests/<name>.py read, not imported, for a test module whose imports need an optional extra
    (test_hf: transformers), so the page is the same with or without it: a stand-in module whose
    test functions carry their ``parametrize`` marks (argument names, values, ids) as far as the
    source spells them, enough for ``cases``, ``ids`` and ``ref``. A value that is not a literal is
    kept as its source text, a ``pytest.param(..., id=...)`` as its id."""
    path = ROOT / "tests" / f"{name}.py"
    module = SimpleNamespace(__file__=str(path), __name__=f"tests.{name}")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            marks = [_parametrize(d) for d in node.decorator_list
                     if isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.parametrize"]
            setattr(module, node.name, SimpleNamespace(__name__=node.name, __module__=module.__name__,
                                                       pytestmark=marks))
    return module


def _parametrize(call: ast.Call) -> SimpleNamespace:
    """A ``pytest.mark.parametrize(names, values, ids=...)`` call as the mark ``cases`` and ``ids`` read."""
    def value(node: ast.expr) -> object:
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.param":
            given = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg == "id"}
            return SimpleNamespace(id=given.get("id"))
        try:
            return ast.literal_eval(node)
        except ValueError:
            return ast.unparse(node)

    names, values = call.args[:2]
    if not isinstance(values, (ast.List, ast.Tuple)):
        raise ValueError(f"line {call.lineno}: parametrize values are not a list in the source; import the module")
    kwargs = {k.arg: [value(v) for v in k.value.elts] for k in call.keywords
              if k.arg == "ids" and isinstance(k.value, (ast.List, ast.Tuple))}
    return SimpleNamespace(name="parametrize", args=(ast.literal_eval(names), [value(v) for v in values.elts]),
                           kwargs=kwargs)


def ref(module, fn: Callable) -> str:
    path = Path(module.__file__).relative_to(ROOT)
    return f"`{path}::{fn.__name__}`"


def rows() -> list[tuple[str, str, str]]:
    from tests import test_bad_files as bad
    from tests import test_cli as cli
    from tests import test_config as config
    from tests import test_experiment as experiment
    from tests import test_generate as gen
    from tests import test_model_inputs as inputs
    from tests import test_security as sec
    from tests import test_state as state
    from tests.analysis import test_inspect as insp
    from tests.analysis import test_length as length
    from tests.memory import test_layer as layer
    from tests.train import test_checkpoint as ckpt
    from tests.train import test_crash as crash
    from tests.train import test_loop as loop
    from tests.train import test_nonfinite as nan
    from tests.train import test_progress as prog
    from tests.train import test_run as rundir

    hf = unimported("test_hf")  # its import needs transformers (the hf extra): read, not imported
    with tempfile.TemporaryDirectory() as tmp:
        traced = {keep: crash.kill_points(Path(tmp) / f"keep{keep}", keep) for keep in crash.KEEP}
    writes = {keep: " + ".join(str(len(p)) for p in points) for keep, points in traced.items()}
    points = traced[crash.KEEP[0]]
    kills = "; ".join(f"{what!r} #{n}: {why}" for what, n, why in crash.SIGKILLS)
    fuzz = [bad.test_a_bad_config_is_one_line_naming_the_file, bad.test_a_bad_train_json_is_named,
            bad.test_a_bad_safetensors_file_is_named, bad.test_a_bad_state_file_is_named,
            bad.test_a_bad_metrics_file_is_named_and_a_torn_last_line_dropped]
    fixed = [bad.test_the_cases_of_the_issue, bad.test_eval_of_a_damaged_run_is_one_line_naming_the_file,
             bad.test_resume_with_a_damaged_last_and_nothing_older_names_the_file,
             crash.test_damaged_last_is_named_and_the_previous_checkpoint_takes_over]
    return [
        ("Atomic checkpoints: a kill at any step of a checkpoint write leaves one that resume finds and loads",
         ref(crash, crash.test_a_kill_at_each_point_of_a_checkpoint_write_leaves_one_that_loads),
         f"{sum(sum(map(len, p)) for p in traced.values())} kill points over {len(points)} writes in a row "
         "(fresh, replacing, replacing again): "
         + ", ".join(f"{writes[k]} with train.keep_last={k}" for k in crash.KEEP)
         + ", each followed by recovery, a load that checks the weights' step, the rest of the writes, and "
         "at most keep_last - 1 good step checkpoints beside last"),
        ("A damaged checkpoint is named in one line and resume falls back to the newest good one, saying so",
         ref(crash, crash.test_damaged_last_is_named_and_the_previous_checkpoint_takes_over),
         f"{cases(crash.test_damaged_last_is_named_and_the_previous_checkpoint_takes_over)} damages "
         "(truncated, one flipped byte, deleted) x (model.safetensors, train.safetensors, train.json)"),
        ("SIGKILL resume: a real training process killed and resumed equals an uninterrupted run "
         "(metrics.jsonl, results.json and both checkpoints, timing fields aside)",
         ref(crash, crash.test_sigkilled_training_resumes_to_the_uninterrupted_result),
         f"{len(crash.SIGKILLS)} SIGKILLs in a row, each resumed: {kills}"),
        ("Every bad input file gets one line naming the file and the problem; no traceback from the CLI",
         ", ".join(ref(bad, f) for f in fuzz),
         f"{sum(map(examples, fuzz))} hypothesis-generated bad files ("
         + ", ".join(f"{examples(f)} {name}" for f, name in zip(fuzz, [
             "YAML configs: random bytes, truncations, wrong types", "train.json: random bytes, "
             "truncations, wrong types", "safetensors: random bytes, truncations, flipped bytes, wrong shapes",
             "state files: random bytes, truncations, flipped bytes", "metrics.jsonl: torn last lines, garbage lines, wrong types"],
             strict=True))
         + f"), plus {sum(map(cases, fixed))} fixed cases: "
         + ", ".join(ref(bad if f.__module__ == bad.__name__ else crash, f) for f in fixed)),
        ("A rolling set of good checkpoints: ckpt/last and the train.keep_last - 1 before it as "
         "ckpt/step-N; resume falls back past a damaged last to the newest good one, and eval, inspect, "
         "export, generate and length past a damaged or missing best (or last), each naming in one line the "
         "damaged file and the checkpoint used, without changing the run; inspect's page and length's "
         "results name the checkpoint used",
         f"{ref(bad, bad.test_a_damaged_best_falls_back_to_last_and_says_so)}, "
         f"{ref(insp, insp.test_a_missing_or_damaged_best_falls_back_and_the_page_names_the_checkpoint_shown)}, "
         f"{ref(length, length.test_a_missing_or_damaged_best_falls_back_to_the_newest_good_checkpoint_and_says_which)}, "
         f"{ref(bad, bad.test_resume_with_a_damaged_last_falls_back_to_the_previous_step_checkpoint_and_finishes)}, "
         f"{ref(ckpt, ckpt.test_keep_last_keeps_that_many_training_checkpoints_the_newest)}, "
         f"{ref(ckpt, ckpt.test_keep_last_below_one_is_refused_by_name)}",
         f"{cases(bad.test_a_damaged_best_falls_back_to_last_and_says_so)} reads ("
         + ", ".join(bad.READERS) + " x " + ", ".join(ids(bad.test_a_damaged_best_falls_back_to_last_and_says_so, "how"))
         + ": best's model.safetensors cut in half or one byte flipped, or best deleted), every checkpoint file "
         "unchanged; inspect's page x "
         + ", ".join(ids(insp.test_a_missing_or_damaged_best_falls_back_and_the_page_names_the_checkpoint_shown, "how"))
         + " best; length on a missing and a damaged best and a run without checkpoint (skipped, saying so); "
         f"{cases(bad.test_resume_with_a_damaged_last_falls_back_to_the_previous_step_checkpoint_and_finishes)} "
         "damaged lasts (truncated, flipped byte x model.safetensors, train.safetensors, train.json) resumed "
         "from step-000002 to the undamaged run's checkpoint; keep_last "
         + ", ".join(ids(ckpt.test_keep_last_keeps_that_many_training_checkpoints_the_newest, "keep"))
         + " each leave exactly that many; keep_last=0 refused naming train.keep_last"),
        ("A state file carries the SHA-256 of its data (in its safetensors header, as a checkpoint's "
         "train.json records its files'); a changed byte, or a field of the wrong shape or dtype "
         "(position included), is refused in one line naming the file (and the field)",
         f"{ref(state, state.test_every_flipped_byte_of_a_state_file_is_refused_naming_it)}, "
         f"{ref(state, state.test_a_state_file_with_a_wrong_position_is_refused_by_name)}",
         "every byte of a saved state flipped in turn; "
         f"{cases(state.test_a_state_file_with_a_wrong_position_is_refused_by_name)} positions ("
         + ", ".join(ids(state.test_a_state_file_with_a_wrong_position_is_refused_by_name, "position")) + ")"),
        ("A MemoryState given to forward, forward_sequence (packed rows and the trainer's checked path "
         "included), decode, a stack's SelectiveMemory or the one-line layer is checked first: a field that is "
         "not a tensor, or of the wrong shape, dtype or device (position included), or slots of another "
         "count or width, is one ValueError naming the field, from shapes and dtypes only (no device sync)",
         f"{ref(inputs, inputs.test_a_state_field_of_the_wrong_shape_or_dtype_is_named)}, "
         f"{ref(layer, layer.test_a_state_that_does_not_fit_is_named_by_the_layer_and_the_one_line_layer)}",
         f"{cases(inputs.test_a_state_field_of_the_wrong_shape_or_dtype_is_named)} calls ("
         + ", ".join(ids(inputs.test_a_state_field_of_the_wrong_shape_or_dtype_is_named, "field"))
         + " x " + ", ".join(ids(inputs.test_a_state_field_of_the_wrong_shape_or_dtype_is_named, "entry"))
         + f"), and {cases(layer.test_a_state_that_does_not_fit_is_named_by_the_layer_and_the_one_line_layer)} "
         "states (" + ", ".join(ids(layer.test_a_state_that_does_not_fit_is_named_by_the_layer_and_the_one_line_layer,
                                    "change"))
         + ") for a stack's layer and the one-line layer, its open segment and a full one"),
        ("An empty config file is an error; leaving out --config gives the defaults",
         f"{ref(bad, bad.test_the_cases_of_the_issue)} (`empty`), {ref(bad, bad.test_no_config_is_the_defaults)}",
         "empty, comment-only and null files (tests/test_config.py::test_empty_yaml_is_an_error_not_the_defaults)"),
        ("An unexpected error is one line too; SELMEM_TRACEBACK=1 shows the traceback",
         ref(cli, cli.test_an_unexpected_error_is_one_line_and_the_traceback_is_opt_in), "a KeyError in a command"),
        ("Numerical faults stop with the step and the layer, before any weight changes, keeping the last "
         "checkpoint; train.nonfinite=skip skips the step",
         f"{ref(nan, nan.test_a_fault_stops_the_run_with_step_and_layer_and_keeps_the_checkpoint)}, "
         f"{ref(nan, nan.test_skip_goes_on_without_the_faulty_step)}",
         f"{cases(nan.test_a_fault_stops_the_run_with_step_and_layer_and_keeps_the_checkpoint)} faults at step "
         f"{nan.FAULT_AT} (NaN weight, inf gradient, NaN state), plus one skipped step"),
        ("forward checks a given state for NaN/inf (model.check_finite) and refuses an empty batch",
         f"{ref(nan, nan.test_forward_refuses_a_state_with_nan_or_inf_naming_the_layer)}, "
         f"{ref(nan, nan.test_an_empty_batch_is_refused_at_the_boundary)}",
         "NaN and inf in slots, NaN in usage; the flag off lets NaN through"),
        ("Progress: a tqdm bar on a terminal, plain lines otherwise, with step/total, elapsed, ETA, tokens/s, "
         "loss and the last test metric; the run folder first; a resume names its step; --train.ckpt-every",
         ", ".join(ref(prog, f) for f in [prog.test_plain_lines_when_not_a_terminal, prog.test_a_bar_on_a_terminal,
                                          prog.test_training_prints_the_run_folder_first_then_one_line_per_log,
                                          prog.test_ckpt_every_writes_checkpoints_between_evaluations_without_changing_the_run])
         + f", {ref(loop, loop.test_resume_continues_exactly)}",
         "a fake terminal and a plain stream; a run crashed between evaluations resumes from its ckpt-every "
         "checkpoint to the same metrics"),
        ("A run name is one folder under train.out_dir: a path separator, '.', '..', an absolute or a blank "
         "name is refused in one line naming train.name, before anything is written",
         ref(cli, cli.test_a_run_name_that_is_not_one_folder_name_is_refused),
         f"{cases(cli.test_a_run_name_that_is_not_one_folder_name_is_refused)} names: "
         + ", ".join(ids(cli.test_a_run_name_that_is_not_one_folder_name_is_refused, "name"))),
        ("A run killed before its first checkpoint (neither resumable nor restartable before) starts afresh in "
         "its folder, its old metrics cleared, and says so; a folder holding files a run does not write is "
         "still refused",
         f"{ref(rundir, rundir.test_a_run_killed_before_its_first_checkpoint_starts_afresh_in_its_folder)}, "
         f"{ref(rundir, rundir.test_a_folder_that_is_not_a_run_without_checkpoint_is_still_refused)}",
         "a run killed at step 3 of 4 with a half-written ckpt/last.tmp: resume is refused, a fresh start "
         "gives the metrics.jsonl and test result of a clean run"),
        ("One writer per run folder: an OS lock (fcntl.flock on run.lock) refuses a second process by name "
         "and pid, and is released when its process dies, however it dies",
         f"{ref(rundir, rundir.test_two_processes_on_one_run_name_one_trains_the_other_is_refused)}, "
         f"{ref(rundir, rundir.test_a_run_folder_held_by_a_lock_is_refused_by_name)}, "
         f"{ref(rundir, rundir.test_the_lock_goes_with_a_killed_process)}",
         "two processes released together through a file gate on one name: exactly one trains, the other "
         "exits 2 naming the winner's pid, the survivor's metrics.jsonl equals a clean run's record for record "
         "(timing aside); a "
         "SIGKILLed holder frees the folder"),
        ("`selmem export` refuses a folder that is not empty unless --force, and never writes into a run "
         "folder or its ckpt/, even with --force",
         f"{ref(gen, gen.test_export_never_writes_into_a_run_folder_or_its_checkpoints)}, "
         f"{ref(gen, gen.test_export_refuses_a_folder_that_is_not_empty_unless_forced)}",
         f"{cases(gen.test_export_never_writes_into_a_run_folder_or_its_checkpoints)} cases ("
         + ", ".join(ids(gen.test_export_never_writes_into_a_run_folder_or_its_checkpoints, "dest"))
         + " x with and without --force), every file of the run unchanged; a non-empty folder, then --force"),
        ("A YAML key given twice in one mapping is an error naming the file, the key and both lines",
         f"{ref(config, config.test_a_key_given_twice_is_named_with_its_lines)}, "
         f"{ref(config, config.test_a_merge_key_may_still_be_overridden)}",
         f"{cases(config.test_a_key_given_twice_is_named_with_its_lines)} files ("
         + ", ".join(ids(config.test_a_key_given_twice_is_named_with_its_lines, "text"))
         + "); a merge key (<<: *base) may still be overridden"),
        ("Options are checked at the boundary, naming the field or flag: NaN/inf in a float field, "
         "model.topk above the segment, train.device, generate's --temperature, --top-k and --device; train's "
         "before any run folder is made, so a refused run leaves nothing that blocks its name; a numerical "
         "stop before any checkpoint says there is none",
         f"{ref(cli, cli.test_train_errors_exit_2_before_training)} ("
         + ", ".join(f"`{i}`" for i in ids(cli.test_train_errors_exit_2_before_training, "yaml_edit")
                     if i in ("nan-lr", "nan-lr-flag", "topk>segment", "bad-device", "no-cuda")) + "), "
         f"{ref(gen, gen.test_generate_refuses_bad_options_by_flag)}, "
         f"{ref(nan, nan.test_a_fault_before_the_first_checkpoint_says_there_is_none)}",
         f"{cases(gen.test_generate_refuses_bad_options_by_flag)} generate options ("
         + ", ".join(ids(gen.test_generate_refuses_bad_options_by_flag, "argv"))
         + "; no-cuda is skipped where CUDA is available), an inf gradient at step "
         f"{nan.FAULT_AT} with the first checkpoint at step 6"),
        ("A bad value, an unknown flag or a missing argument on the command line is one line naming the flag "
         "and what is wrong (`--model.slots takes an int, got 'abc'`, `unknown flag --model.slot (did you mean "
         "--model.slots?)`), exit code 2, where tyro printed a box of 8-10 lines; `--help` is unchanged",
         f"{ref(cli, cli.test_a_bad_command_line_is_one_line_naming_the_flag)}, "
         f"{ref(cli, cli.test_without_tyros_error_hook_its_box_is_one_line_too)}",
         f"{cases(cli.test_a_bad_command_line_is_one_line_naming_the_flag)} command lines ("
         + ", ".join(ids(cli.test_a_bad_command_line_is_one_line_naming_the_flag, "argv"))
         + "); without tyro's private error hook, the box's first section in one line"),
        ("A full disk (or any OSError while writing) stops a run with one line naming the file it was writing, "
         "where `[Errno 28] No space left on device` and save_file's SafetensorError named none",
         f"{ref(rundir, rundir.test_a_full_disk_names_the_file_being_written)}, "
         f"{ref(state, state.test_a_full_disk_names_the_state_file)}",
         f"a full disk at each of the {len(rundir.RUN_FILES)} files a two-step run writes ("
         + ", ".join(rundir.RUN_FILES) + "), and at a state file"),
        ("A segment above model.max_segment_len names the config file and both fields (train.segment_len or "
         "task.segment_len, and model.max_segment_len), and the flags when one set it",
         f"{ref(cli, cli.test_train_errors_exit_2_before_training)} ("
         + ", ".join(f"`{i}`" for i in ids(cli.test_train_errors_exit_2_before_training, "yaml_edit") if "segment" in i)
         + f"), {ref(cli, cli.test_other_errors_exit_2)} ("
         + ", ".join(f"`{i}`" for i in ids(cli.test_other_errors_exit_2, "argv") if "segment" in i) + ")",
         "the flag, the YAML field, the task's field, and `selmem tasks --config`"),
        ("from_pretrained on a damaged model.safetensors is one line naming the file, where transformers "
         "raised safetensors' error naming none",
         ref(hf, hf.test_from_pretrained_on_a_truncated_export_names_the_file),
         f"{cases(hf.test_from_pretrained_on_a_truncated_export_names_the_file)} loads ("
         + ", ".join(ids(hf.test_from_pretrained_on_a_truncated_export_names_the_file, "keep"))
         + " cut x the class and AutoModelForCausalLM) of an export"),
        ("Any config a user can write validates or raises a one-line ValueError/TypeError naming the field "
         "(for a bound across fields, one of its section)",
         ref(experiment, experiment.test_any_user_config_validates_or_names_the_field_in_one_line),
         f"{examples(experiment.test_any_user_config_validates_or_names_the_field_in_one_line)} "
         "hypothesis-generated configs: smoke.yaml or another task with 1-3 model/task/train fields, or a "
         "random key, set to random values of random types, through YAML"),
        ("Security: safetensors, JSON and YAML safe_load only; nothing unpickles or runs file content",
         ref(sec, sec.test_no_unsafe_loading_or_execution),
         "every .py file under selmem/ scanned (a per-file count would go stale with each new module); "
         "the scanner catches each of "
         f"{cases(sec.test_the_scanner_catches_each_unsafe_pattern)} unsafe patterns"),
    ]


def render() -> str:
    lines = ["# Reliability", "",
             "What selmem promises about crashes, bad files and numerical faults, the test that checks each",
             "promise, and what that test tries. Generated by `./dev reliability` (tests/reliability.py) from the",
             "tests' own code; tests/test_reliability.py fails when this page is stale. All of it runs in",
             "`./dev test` (and so in `.ci/run`).", "",
             "| Promise | Checked by | What it tries |", "|---|---|---|"]
    lines += [f"| {p} | {t} | {w} |" for p, t, w in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
