"""`erase sample` and the CLI's promises: files, determinism, one-line errors, nothing damaged."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from erasecli import api
from erasecli.recipes import Recipe, load_recipe


def erase(*args, stdin=None, env=None, cwd=None, process=False):
    """`erase ARGS` as a user runs it, returning (returncode, stdout, stderr) like subprocess.run. By default the CLI's
    own entry point runs in this process with argv, the standard streams, the environment, the working folder and
    the SIGTERM handler swapped in and back: the same code path, without a fresh interpreter's imports (1.4 s
    for a run that stops at bad input, 4-6 s for one that loads a pipeline, on 2 cores). `process=True`: a real
    `python -m erasecli` child (signals, import-time settings, library loggers that hold the real stderr)."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    e.pop("ERASE_DEBUG", None) if not env or "ERASE_DEBUG" not in env else None
    if process:
        return subprocess.run([sys.executable, "-m", "erasecli", *args], input=stdin, capture_output=True, text=True,
                              env=e, cwd=cwd, timeout=300)
    return _in_process([str(a) for a in args], stdin, e, cwd)


def _in_process(args, stdin, env, cwd):
    import io
    import signal
    import traceback

    from erasecli.cli import main

    saved = sys.argv, sys.stdin, sys.stdout, sys.stderr, dict(os.environ), os.getcwd(), signal.getsignal(signal.SIGTERM)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        sys.argv, sys.stdin, sys.stdout, sys.stderr = ["erase", *args], io.StringIO(stdin or ""), out, err
        try:
            main()
        except SystemExit as x:
            if isinstance(x.code, str):  # sys.exit("message"): Python prints it and exits 1
                print(x.code, file=err)
            code = 1 if isinstance(x.code, str) else (x.code or 0)
        except BaseException:  # what an uncaught exception does to the interpreter
            traceback.print_exc(file=err)
            code = 1
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved[:4]
        os.environ.clear()
        os.environ.update(saved[4])
        os.chdir(saved[5])
        signal.signal(signal.SIGTERM, saved[6])
    return subprocess.CompletedProcess(["erase", *args], code, out.getvalue(), err.getvalue())


def one_line_error(proc, code):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_lists_every_command():
    p = erase("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("sample", "evaluate", "unlearn"))
    assert "train-critic" in p.stdout


def test_sample_writes_images_grid_manifest_and_recipe(tmp_path):
    out = tmp_path / "s"
    p = erase("sample", "--prompt", "a blue handwritten digit five", "-n", "3", "--steps", "5", "--out", str(out))
    assert p.returncode == 0, p.stderr
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in manifest] == [0, 1, 2]
    assert all((out / m["file"]).exists() and m["base"] == "tiny" for m in manifest)
    assert len(list(out.glob("grid-*.png"))) == 1
    assert load_recipe(out / "recipe.yaml").sample.steps == 5
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")], "temp folder left behind"


def test_prompts_from_stdin_and_json_output(tmp_path):
    p = erase("sample", "--prompts-file", "-", "-n", "1", "--steps", "3", "--out", str(tmp_path / "o"), "--json",
              stdin="a red digit\n\na green digit seven\n")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # stdout holds one JSON document and nothing else
    assert [x["prompt"] for x in doc["images"]] == ["a red digit", "a green digit seven"]
    assert len(list((tmp_path / "o").glob("grid-*.png"))) == 2


def test_same_seed_same_images_whatever_the_batch(tiny):
    r = Recipe()
    r1 = load_recipe(None, ["sample.batch_size=1", "sample.steps=8"])
    r4 = load_recipe(None, ["sample.batch_size=4", "sample.steps=8"])
    a = api.sample(r1, prompts=["a white digit two", "a digit"], n=2, base=tiny)
    b = api.sample(r4, prompts=["a white digit two", "a digit"], n=2, base=tiny)
    for x, y in zip(a, b):
        assert (x.prompt, x.seed) == (y.prompt, y.seed)
        assert np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 1
    c = api.sample(load_recipe(None, ["sample.seed=100", "sample.steps=8"]), prompts=["a digit"], n=1, base=tiny)
    assert np.abs(np.asarray(c[0].image, dtype=int) - np.asarray(a[2].image, dtype=int)).mean() > 1
    assert r.sample.seed == 0


def test_existing_out_is_refused_and_untouched(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = one_line_error(erase("sample", "-p", "a digit", "--out", str(out)), 1)
    assert "already exists" in line and "--overwrite" in line
    assert (out / "mine.txt").read_text() == "keep"


def test_overwrite_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    p = erase("sample", "-p", "a digit", "-n", "1", "--steps", "2", "--out", str(out), "--overwrite")
    assert p.returncode == 0, p.stderr
    assert not (out / "old.txt").exists() and (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("args, code, needle", [
    (["sample", "--out", "x"], 2, "no prompts given"),
    (["sample", "-p", "a", "--out", "x", "--steps", "0"], 1, "sample.steps must be >= 1, got 0"),
    (["sample", "-p", "a", "--out", "x", "--set", "sample.step=3"], 1, "sample.steps"),
    (["sample", "-p", "a", "--out", "x", "--base", "sd-9"], 1, "tiny, sd-1.4"),
    (["sample", "-p", "a", "--out", "x", "--delta", "no/such/delta"], 1, "does not exist"),
    (["sample", "-p", "a", "--out", "x", "--recipe", "no/such.yaml"], 1, "no/such.yaml"),
    (["sample", "-p", "a", "--out", "x", "-n", "0"], 2, "-n must be >= 1"),
    (["sample", "--bogus"], 2, "--bogus"),
    (["sample", "-p", "a", "--out", "x", "--dtype", "fp8"], 2, "fp8"),
])
def test_bad_input_gives_one_line_and_exit_code(tmp_path, args, code, needle):
    p = erase(*args, cwd=tmp_path)
    assert needle in one_line_error(p, code)
    assert not (tmp_path / "x").exists()


def test_malformed_recipe_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample:\n  steps: 5\n  guidance: [1,\n")
    line = one_line_error(erase("sample", "-p", "a", "--out", str(tmp_path / "o"), "--recipe", str(bad)), 1)
    assert "bad.yaml" in line and "line" in line


def test_missing_sd_weights_offline_is_one_line(tmp_path):
    line = one_line_error(erase("sample", "-p", "a", "--out", str(tmp_path / "o"), "--base", "sd-1.4"), 1)
    assert "CompVis/stable-diffusion-v1-4" in line and "hf download" in line


def test_debug_env_shows_the_traceback(tmp_path):
    p = erase("sample", "-p", "a", "--out", str(tmp_path / "o"), "--base", "sd-9", env={"ERASE_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr
