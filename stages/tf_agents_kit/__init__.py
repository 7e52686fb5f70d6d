"""What the TF-Agents stages share: the Gymnasium-to-TF-Agents adapter, TensorBoard
summaries and their common settings."""
