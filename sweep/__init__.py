"""`genrep-sweep`: the paper's studies as one command. An experiment file names a base
configuration of the three stages and the axes to vary; every cell of the grid is generated,
trained and probed (sharing datasets and encoders between cells where it can), and the reports
become a results table and plots (Fig. 5, Fig. 6, Table 1 shapes).

experiment.py reads and checks the file, plan.py turns it into cells and stage jobs, runner.py runs
the jobs on this machine, commands.py writes them for a cluster scheduler, results.py and plots.py
gather the reports.
"""
