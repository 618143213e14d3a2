-- Token rotation: a successor token and the grace period of its predecessor.
ALTER TABLE tokens ADD COLUMN rotated_to TEXT;
ALTER TABLE tokens ADD COLUMN rotated_from TEXT;
