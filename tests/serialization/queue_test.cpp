// Tests for serialization/queue: typed values over shm_queue between processes.
