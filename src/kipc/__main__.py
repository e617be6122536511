from kipc.cli.main import main

raise SystemExit(main())
