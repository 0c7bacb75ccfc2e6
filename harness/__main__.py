"""``python -m harness``: the Hydra-configured sweep (see harness.app)."""

from harness.app import main

if __name__ == "__main__":
    main()
