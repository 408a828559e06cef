"""``python -m incident``: see the package docstring for usage."""

from incident import main

raise SystemExit(main())
