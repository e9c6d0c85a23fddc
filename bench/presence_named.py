"""bench/presence.py with presence.NAMED_READINGS set: how many of a place's best readings may be a class the
phrase names ("dog" on a place read "beagle") for the phrase to count as that class.

    python bench/presence_named.py N RUN [RUN ...]
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmsplat.query.presence as presence  # noqa: E402

presence.NAMED_READINGS = int(sys.argv[1])
sys.argv = [str(Path(__file__).with_name("presence.py"))] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
