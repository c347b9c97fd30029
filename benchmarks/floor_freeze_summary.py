"""Per-cell and per-part summaries of benchmarks/validation.py lines for `floor_freeze` (labels "taa-euler ff<c>",
"taa-euler nostop ff<c>"; docs/METHOD.md section 9): iterations to 40 dB of x0 against the same-precision sequential
x0, against float32's on the same cell, seed and label (with ff<c> dropped where float32 lacks the label), and the
iterations at the stop.

    python benchmarks/floor_freeze_summary.py benchmarks/results/floor_freeze_judging.jsonl

Per part, dtype and label: solves; never40 (no iterate reached 40 dB before the stop); below40@stop; within+2 (the
solves whose iterations to 40 dB are within float32's + 2, of those whose float32 solve reached 40 dB); the mean of
(iterations to 40 dB - float32's), a solve that never reached 40 dB counted at its iteration count + 1; the mean
iterations at the stop.
"""

from __future__ import annotations

import collections
import json
import re
import sys


def it40(psnr: list[float]) -> int | None:
    return next((i + 1 for i, p in enumerate(psnr) if p >= 40), None)


def main(paths: list[str]) -> None:
    rows = [json.loads(line) for f in paths for line in open(f)]
    f32 = {(r["part"], r["model"], r["sampler"], r["steps"], r["cfg"], r["solver"]): r
           for r in rows if r["dtype"] == "float32"}
    agg = collections.defaultdict(lambda: [0, 0, 0, 0, 0.0, 0])
    stops = collections.defaultdict(list)
    for r in rows:
        key = (r["part"], r["model"], r["sampler"], r["steps"], r["cfg"])
        its = [it40(ps) for ps in r["psnr"]]
        base = f32.get(key + (r["solver"],)) or f32.get(key + (re.sub(r" ff[0-9.]+$", "", r["solver"]),))
        bits = [it40(ps) for ps in base["psnr"]] if base else [None] * len(its)
        print(f'{r["part"]:10s} {r["model"]} {r["sampler"]}-{r["steps"]} cfg{r["cfg"]:g} {r["dtype"]:8s} '
              f'{r["solver"]:22s} it40 {its} f32 {bits} stop {r["iterations"]} '
              f'psnr_stop {[round(p, 1) for p in r["psnr_stop"]]}')
        a = agg[(r["part"], r["dtype"], r["solver"])]
        stops[(r["part"], r["dtype"], r["solver"])] += r["iterations"]
        for i, b, p, n in zip(its, bits, r["psnr_stop"], r["iterations"], strict=True):
            a[0] += 1
            a[1] += i is None
            a[2] += p < 40
            if b is not None:
                late = (i if i is not None else n + 1) - b
                a[3] += late <= 2
                a[4] += late
                a[5] += 1
    print()
    for k, a in sorted(agg.items()):
        s = stops[k]
        print(f"{k[0]:10s} {k[1]:8s} {k[2]:22s} solves {a[0]:3d} never40 {a[1]:2d} below40@stop {a[2]:2d} "
              f"within+2 {a[3]}/{a[5]} mean(it40 - f32) {a[4] / max(a[5], 1):+.2f} mean stop {sum(s) / len(s):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
