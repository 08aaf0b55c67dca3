"""Benchmark the clipped optimizer step against torch: the same as ``gradguard bench``.

    python benchmarks/step.py                 # the full table (a few minutes on 2 cores)
    python benchmarks/step.py --sizes 25 --optimizers adamw,rmsprop --reps 5 --train
"""

from gradguard.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
