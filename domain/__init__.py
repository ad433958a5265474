"""The domain: Open-Assistant's rules as pure code. The event contract (events.py), typed
commands and ``decide`` (commands.py, decide.py), the write model and the tree manager
(model.py, tree_manager.py), the rules the views share (rules.py, labels.py), OA's request
bodies and error codes (protocol.py, errors.py), its configuration (config.py). Imports
nothing of this project's other folders: no HTTP, no database, no clock."""
