from grukit.cli import main

raise SystemExit(main())
