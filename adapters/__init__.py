"""I/O adapters for tether: transports, the asyncio driver, the hub, the CLI."""
