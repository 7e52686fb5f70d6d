"""The batched policy-gradient machinery (REINFORCE) and its settings, shared by the
CartPole and LunarLander trainers."""
