"""The search itself: one trainer fit per trial (trainable), the one Tuner factory (tuning), the
space, the objectives' searcher and scheduler, MO-ASHA, progress, resume after a killed driver,
embedded Ray and its reaper, cluster sizing, checkpoint storage, warm start, the paper's sweeps,
the cluster's data preparation job."""
