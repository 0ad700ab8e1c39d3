"""``python -m verify.cli``: the same command line as the ``attnverify`` script."""

from verify.cli import main

main()
