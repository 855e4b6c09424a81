"""The core of ticket-to-invoice: canonical models, money, ledger, settings and the CLI.

`billing` imports none of the other project packages at import time (arrows point
`flows → tasks → connectors, rules → billing`); the CLI is the composition root and
reaches the flows lazily, only inside its commands.
"""
