"""Stage 2: populations of networks trained on real data, resumably, before distillation.

`experts`: trajectory buffers for trajectory matching (MTT, TESLA, FTD, DATM);
`teachers`: BN classifiers for statistics matching (SRe2L, CDA, G-VBSM, RDED) and relabel;
`conv_targets`: G-VBSM conv-statistics targets cached next to a teacher;
`train`: what experts and teachers share (manifest, resume per epoch, Orbax per member).
"""
