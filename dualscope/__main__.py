from dualscope.cli import main

main()
