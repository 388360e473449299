"""What a person reads or sends: the HTML report, the submission zip, rejudged picks."""
