"""The flows: what runs on a schedule, on an event, or on demand from the Prefect UI."""
