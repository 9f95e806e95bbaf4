from swarm_hpc.cli import main

main()
