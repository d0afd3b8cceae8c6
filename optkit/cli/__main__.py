from optkit.cli.entry import main

main()
