from msa.cli import main

raise SystemExit(main())
