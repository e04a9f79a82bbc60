"""Floor 1 of KripTik Fleet: one sandbox and what acts on it, in plain Python (no Ray).

:mod:`.backends` runs untrusted code (local bubblewrap sandboxes, Modal Sandboxes, a fake) behind
one contract; :mod:`.llm` puts the model providers (Anthropic, OpenAI-compatible, replay from
cassettes) behind one protocol; :mod:`.tools`, :mod:`.agent_loop` and :mod:`.agent_prompt` are
one agent's tools, loop and prompt; :mod:`.verifiers` are the swarm's six checks;
:mod:`.sandbox_session`, :mod:`.proxy_sandbox` and :mod:`.exec_channel` are how an actor holds a
sandbox and how others reach it; :mod:`.errors` is the one exception tree and :mod:`.settings`
the environment. Nothing here imports ``coordinator``, ``actors`` or ``serve``. Only the two
foundations every module shares are re-exported here, so that importing any part stays cheap.
"""

from sandbox_agents.errors import KriptikError
from sandbox_agents.settings import Settings, get_settings

__all__ = ["KriptikError", "Settings", "get_settings"]
