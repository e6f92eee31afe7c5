"""The Ray runtime's central side: the Leap learner actor and the training driver."""
