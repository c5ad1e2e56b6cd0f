from mock_api.cli import main

raise SystemExit(main())
