"""What a run is, below every stage that makes or uses one: ``config`` (the typed, bounded training config a
run is registered with), ``registry`` (the run registry: runs, their status, epochs and files), ``layout``
(where a work directory keeps what), ``model`` (loading a run's or an imported model's weights), ``folder``
(the exported model folder format) and ``hub`` (its Hugging Face transport)."""
