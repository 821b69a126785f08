"""Training across processes beyond plain DDP: FSDP2 sharding (fsdp.py), sharded
checkpoints with torch.distributed.checkpoint (dcp.py), DeepSpeed (deepspeed.py)
and the option checks for them (rules.py)."""
