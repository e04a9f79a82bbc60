"""Warm pools of started actors (proxies with standby sandboxes, teams, agents, swarms) and their aliases."""
