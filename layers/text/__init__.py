"""Chinese text of the cases (issue 15): classification and routing (``classify.py``), the place in
the text (``places.py``), recurring problems 热点问题 (``recurring.py``) and the quality of
departments' replies (``replies.py``); segmentation with jieba (``segment.py``). Everything runs
offline: jieba's own dictionary, scikit-learn, cpca's bundled administrative table."""
