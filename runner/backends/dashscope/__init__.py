"""The DashScope HTTP client: async submit, poll and download, sync calls, typed errors."""
