"""The job images this box keeps: which were used and when (`ledger`), which may go (`policy`),
and the thread that applies the policy (`upkeep`)."""
