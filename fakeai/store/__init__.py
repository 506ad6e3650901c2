"""fakeai.store: what outlives a request (uploaded files, batch records); see the modules' opening comments."""


def public(record: dict) -> dict:
    """A stored object as the API shows it: keys starting with "_" are the store's own."""
    return {k: v for k, v in record.items() if k[0] != "_"}
