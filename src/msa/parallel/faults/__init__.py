"""The fault suite: the memory bank and Memory Parallel under real faults, with real processes.

``python -m msa.parallel.faults [--trials N] [--quick] [--kinds kill,readers,disk,flips,ranks] [--json FILE]``
runs every kind and prints a table of trials / passed per kind (JSON with every trial's outcome):

    kill     a writer process (add / delete / compact / update) SIGKILLed after a random delay: the bank
             opens, passes ``check()``, holds every acknowledged write, no partial or duplicated
             document, and a re-run of the same commands completes without duplicates or errors
    readers  snapshots taken while another bank object adds, deletes, updates and compacts: no error,
             and every text read from a snapshot is the text of that snapshot's generation
    disk     a full disk (a small tmpfs; skipped with the reason when it cannot be mounted) at several
             free-space levels: a write stores everything or nothing and fails with one BankError
             naming the file; reads (stats, texts, ask) still work; after freeing space a re-run completes
    flips    one flipped bit in the catalog or a segment file: detected (a BankError) or harmless (every
             read answers as before and ``check()`` passes); a wrong text is never returned
    ranks    a Memory Parallel rank SIGSTOPped during shard open, routing or decoding (2 gloo ranks
             under torchrun): the job ends within timeout + 5 s with the stopped rank named

It lives above the engine (it drives Memory Parallel); the model is the shipped ``msa-bios-tiny``.
"""
