"""Lever: PraNet's structure loss (BCE plus IoU, each weighted 1 + 5 |avgpool31(mask) - mask|, so pixels near
the polyp's boundary count up to six times more) instead of BCE + soft Dice."""

LOSS = "structure"
