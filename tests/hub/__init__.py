"""A local Hugging Face hub for tests: small git repos served by olah behind a loopback proxy.

`repos.build_mirror(root)` writes the repos; `server.HubServer` serves them. See docs/hub_fixture.md.
"""
