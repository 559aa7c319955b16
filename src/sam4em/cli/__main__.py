from sam4em.cli import main

raise SystemExit(main())
