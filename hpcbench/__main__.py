from hpcbench.cli import main

main()
