"""`python -m bench all` runs every benchmark; `python -m bench NAME [NAME ...]` the named ones;
`python -m bench NAME --option ...` one benchmark with its own options (see `python -m bench.NAME --help`).
`python -m bench --threads N ...` first sets torch.set_num_threads(N) for all of them (default: untouched); on
a CPU that other jobs share, N=1 avoids threads that wait on each other far longer than they compute.

Each benchmark prints JSON lines to stdout; the wall time of each is printed to stderr.
`critic_ablation` (an ablation study), `robustness` (every method trained on two seeds and attacked, tens of
minutes), `compare` (the comparison study: every method, two seeds, quality and attacks, about an hour),
`uce_scale` (uce at SD-1.4 size; its target is a GPU's), `uce_many` (1-5 concepts in one uce delta, a few
minutes), `canvas` (the UnlearnCanvas table on tiny-canvas: every method on 8 concepts) and
`attack_speed` (each attack's seconds, the prompt attack one prompt at a time and batched) run only by name.
"""

import sys
import time

from bench import (attack_speed, canvas, clip_zero_shot, compare, critic_ablation, evaluate_speed, multiprocess,
                   robustness, sample_speed, scaling, sd_size, tiny_quality, uce_many, uce_scale, unlearn_compare)

BENCHES = {"tiny_quality": tiny_quality.main, "evaluate_speed": evaluate_speed.main,
           "unlearn_compare": unlearn_compare.main, "sample_speed": sample_speed.main, "scaling": scaling.main,
           "sd_size": sd_size.main, "multiprocess": multiprocess.main, "clip_zero_shot": clip_zero_shot.main}
BY_NAME_ONLY = {"compare": compare.main, "critic_ablation": critic_ablation.main, "robustness": robustness.main,
                "uce_scale": uce_scale.main, "uce_many": uce_many.main, "canvas": canvas.main,
                "attack_speed": attack_speed.main}


def _run(name: str, fn, argv: list) -> None:
    t0 = time.perf_counter()
    fn(argv)
    print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--threads"] and len(args) > 1:
        import torch

        torch.set_num_threads(int(args[1]))
        args = args[2:]
    known = {**BENCHES, **BY_NAME_ONLY}
    if len(args) > 1 and args[0] in known and args[1].startswith("-"):
        _run(args[0], known[args[0]], args[1:])  # one benchmark with its own options
        return
    names = args or ["all"]
    for name in names:
        if name not in known and name != "all":
            sys.exit(f"unknown benchmark {name!r}; valid: all, {', '.join(known)}")
    t0 = time.perf_counter()
    for name in names:
        if name == "all":
            for bench_name, fn in BENCHES.items():
                _run(bench_name, fn, [])
        else:
            _run(name, known[name], [])
    if len(names) > 1 or names == ["all"]:
        print(f"[bench] total: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
