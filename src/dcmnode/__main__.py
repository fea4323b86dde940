from dcmnode.cli import main

if __name__ == "__main__":  # guarded: metadata worker processes (spawn) import this module as __mp_main__
    raise SystemExit(main())
