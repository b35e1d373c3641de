from erasecli.cli import main

main()
