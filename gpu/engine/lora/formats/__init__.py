"""The LoRA formats beyond plain LoRA (LoCon with a CP core, LyCORIS LoHa and LoKr, DoRA), as updates the fuser adds."""
