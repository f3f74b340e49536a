"""The service's clients, over HTTP only: the `liverseg` CLI and the PACS tools (`liverseg-pacs`).

Nothing here imports the server (`service`), torch or SimpleITK, so the clients install and run
beside a PACS without the model. The two leaf modules the server shares with them import nothing
of the project: `seg_identity` (how a liverseg SEG is recognised) and `log_setup` (patient data
kept out of every process's log).
"""
