"""The BuildCoordinator actor `build:{id}`: the actor, its config, and the Ray-side adapters of its ports."""
