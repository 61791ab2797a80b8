"""The paper's pedagogical experiments: the ball-wall landscape (Figure 2) and the gradient variance /
ESNR of policy gradients through a simulator and through world models (Figure 3)."""
