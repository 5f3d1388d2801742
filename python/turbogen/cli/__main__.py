"""``python -m turbogen.cli``: the ``turbogen`` command."""

from . import main

raise SystemExit(main())
