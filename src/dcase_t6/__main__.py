from dcase_t6.cli import main

main()
