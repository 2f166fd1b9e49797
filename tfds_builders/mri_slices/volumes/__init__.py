"""3D volumes (Clinica CAPS, the OASIS-1 release, NIfTI with a table) into 2D slices.

`settings` (what the user chooses: axis, slice range, step, normalisation, stored size, the
labelling of each layout), `listing` (the volumes a layout found, with subject, session and
label, and what it left out), `reading` (one volume, reoriented to RAS, checked), `slicing` (a
volume's slices, normalised and sized), `extraction` (every volume of a listing sliced into a
folder of PNG slices, in parallel, resumably), `sliced` (that folder read back as a Layout),
`audit` (what the volumes are) and `synthetic` (small phantom cohorts in the three layouts).
"""
