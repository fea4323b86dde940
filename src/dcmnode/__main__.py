from dcmnode.cli import main

raise SystemExit(main())
