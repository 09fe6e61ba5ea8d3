//! dosage → epeis RepairDosageBack, through the real daemon.
