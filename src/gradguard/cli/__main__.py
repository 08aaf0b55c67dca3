"""``python -m gradguard.cli``: the same as the ``gradguard`` command."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
